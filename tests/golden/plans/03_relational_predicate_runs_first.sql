-- The cheap predicate runs in DuckDB (the source); the LLM filter sees only its rows.
SELECT id FROM reviews WHERE LLM_FILTER('Does this review complain about delivery? {text}') AND stars <= 2
