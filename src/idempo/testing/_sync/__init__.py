# DO NOT EDIT: generated from src/idempo/testing/_async/__init__.py by scripts/unasync.py
