SELECT product_id,
  llm_reduce({'model_name': 'default'}, {'prompt': 'Summarize'}, {'review': text}) AS summary,
  llm_rerank({'model_name': 'default'}, {'prompt': 'Most helpful first'}, {'review': text, 'id': id}) AS ranked
FROM reviews GROUP BY product_id
