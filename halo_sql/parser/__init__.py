"""SQL text to statements: sqlglot (DuckDB dialect) for SQL, lark grammars for our own statements
and prompt templates (grammar/)."""
