-- Constrained yes/no answers are cheaper than free text: that predicate runs first.
SELECT id FROM reviews
WHERE length(LLM('Rewrite politely: {text}')) > 20 AND LLM_FILTER('Is it rude? {text}')
