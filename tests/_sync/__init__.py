# DO NOT EDIT: generated from tests/_async/__init__.py by scripts/unasync.py
