"""webhook-receiver: start exactly the CodePipeline pipelines whose monorepo modules changed."""

__version__ = "0.1.0"
