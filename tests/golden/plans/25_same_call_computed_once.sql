-- The same call twice (here in SELECT and WHERE) is one LLM column.
SELECT id, LLM_FILTER('Late? {text}') AS late FROM reviews WHERE LLM_FILTER('Late? {text}') OR stars = 1
