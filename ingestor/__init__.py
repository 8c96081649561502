"""ingestor: tails Stripe's Events API and publishes every event to Kafka, exactly once."""

__version__ = "0.1.0"
