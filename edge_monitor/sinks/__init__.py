"""Where events go: MQTT (with a durable outbox), the console, evidence clips."""
