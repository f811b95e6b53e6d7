-- Run once by the postgres image, as POSTGRES_USER, when its data directory is empty.
-- POSTGRES_DB (regsearch: the Optuna study and the regsearch_* ledger) is created by the
-- image itself; MLflow's tracking server gets a database of its own, because Optuna and
-- MLflow both keep an alembic_version table and cannot share one database.
CREATE DATABASE mlflow;
