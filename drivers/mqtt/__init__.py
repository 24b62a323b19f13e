"""MQTT subscription under asyncio and payload decoders."""
