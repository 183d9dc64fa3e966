"""RabbitMQ: the topology, a confirming publisher, and the one consumer wrapper."""
