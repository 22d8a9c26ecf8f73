"""kalamdb.testing"""
