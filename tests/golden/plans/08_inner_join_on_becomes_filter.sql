-- An LLM condition of an inner join filters the joined rows like WHERE does.
SELECT r.id, p.name FROM reviews r
JOIN products p ON p.id = r.product_id AND LLM_FILTER('Is {r.text} about a {p.name}?')
