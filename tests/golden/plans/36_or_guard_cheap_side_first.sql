-- An OR evaluates its cheap side first: the model is asked only where `stars > 3` is not true.
SELECT id FROM reviews WHERE LLM_FILTER('Is {text} positive?') OR stars > 3
