"""kalamdb.raft"""
