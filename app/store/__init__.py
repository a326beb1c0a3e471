"""All SQL: the store's tables and every read and write of them (app/store/repository.py lists
the concerns); nothing above this package speaks SQL."""
