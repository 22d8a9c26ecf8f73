"""kalamdb.server"""
