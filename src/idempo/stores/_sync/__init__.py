# DO NOT EDIT: generated from src/idempo/stores/_async/__init__.py by scripts/unasync.py
