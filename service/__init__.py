"""The generation service: native ``/v1`` API, HeyGem-compatible ``/easy`` API, job store,
worker processes holding warm pipelines. ``service.app:create_app`` builds the ASGI app,
``service.cli:serve`` runs it under uvicorn (``heygem serve``).
"""
