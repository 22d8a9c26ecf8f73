"""kalamdb.bench"""
