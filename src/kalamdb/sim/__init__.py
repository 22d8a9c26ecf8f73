"""kalamdb.sim"""
