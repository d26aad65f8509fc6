"""The OpenAI-compatible API: protocol models (``protocol``), SSE streaming (``streaming``) and the serving code of
each route family (``serving_*``), as vLLM's ``entrypoints/openai/`` keeps them apart."""
