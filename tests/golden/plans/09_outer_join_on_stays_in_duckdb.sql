-- An outer join's condition decides padding, not filtering: DuckDB evaluates the call.
SELECT r.id, p.name FROM reviews r
LEFT JOIN products p ON p.id = r.product_id AND LLM_FILTER('Is {r.text} about a {p.name}?')
