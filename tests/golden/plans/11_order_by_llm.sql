-- Ordering by an LLM value: the LIMIT cannot go below the map.
SELECT id FROM reviews ORDER BY LLM_CLASSIFY('Urgency of {text}', ['high', 'low']), id LIMIT 2
