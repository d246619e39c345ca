"""The AMQP transport: RabbitMQ through pika, for workers on any number of nodes.

A package rather than one module because it has two sides that share only the wire format and
the connection handling: the coordinator's :class:`~.coordinator.AmqpTransport` and the worker
loop of ``fsclone worker`` (:mod:`.consumer`). Only this package imports pika, and only
:mod:`.link`, :mod:`.coordinator` and :mod:`.consumer` do; :mod:`.settings` and :mod:`.wire`
are plain Python so the CLI can check a broker URL without loading pika.
"""
