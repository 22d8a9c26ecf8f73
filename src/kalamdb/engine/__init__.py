"""kalamdb.engine"""
