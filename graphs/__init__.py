"""The content pipeline: the deployment graph that writes an article, makes its image and audio, stores it and
recommends more, over the model services' handles.

- ``schemas``: the content request and record, the stages; ``config``: the pipeline's ``user_config``.
- ``pipeline``: ``ContentPipeline``, the stages; ``relay``: the outbox relay to the recommender.
- ``catalog``: records, idempotency keys and the outbox (SQL); ``assets``: images and audio (fsspec).
- ``deployment``: the Serve deployment.
"""
