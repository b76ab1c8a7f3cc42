# DO NOT EDIT: generated from src/idempo/_async/__init__.py by scripts/unasync.py
