"""PostgreSQL: the schema, the engine, and the repository that holds every SQL statement."""
