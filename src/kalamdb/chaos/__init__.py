"""kalamdb.chaos"""
