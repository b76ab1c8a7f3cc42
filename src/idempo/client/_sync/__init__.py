# DO NOT EDIT: generated from src/idempo/client/_async/__init__.py by scripts/unasync.py
