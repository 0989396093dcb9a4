"""Attacks and failures against running nodes: rolled-back stores, full disks,
shared data dirs, hostile readers. Real SQLite files, real hypercorn servers on
loopback, real subprocesses; no sleeps to synchronise."""
