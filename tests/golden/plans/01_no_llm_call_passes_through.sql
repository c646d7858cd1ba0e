-- A statement without LLM calls is DuckDB's, byte for byte.
SELECT r.id, p.name FROM reviews r JOIN products p ON p.id = r.product_id WHERE r.stars < 3
