"""The HTTP edge: what a client reaches, in front of the model services and the pipeline.

- ``ingress``: ``Ingress``, the plain class behind every route (calling services, A/B variants, streams);
  ``deployment``: its Serve deployment; ``app``: the FastAPI app, its error handlers and access control.
- ``routes``: the content, health, recommendation and studio routes; ``openai``: the OpenAI-compatible protocol
  and its serving modules (chat, completions, Responses, embeddings, images and speech, models).
- ``dependencies``: what routes share (the ingress, the caller, error responses), so no route imports the app.
- ``haproxy``: the C edge in front of Serve's proxy (caps per service, refusals in JSON); ``deployment`` holds its
  Serve wiring too.
- ``access``, ``rate_limits``, ``admission``: API keys and roles, rate limits and quotas, refusing early.
- ``experiments``: A/B assignment and statistics; ``response_store``: stored responses (``store: true``).
"""
