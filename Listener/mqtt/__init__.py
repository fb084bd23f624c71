"""The MQTT side: the amqtt client adapter, the wire handler, acknowledgement order, publishing."""
