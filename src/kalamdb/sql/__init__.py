"""kalamdb.sql"""
