"""The sidecar's publish API: the app delays, revokes and pushes through it, over HTTP or gRPC.

``serve(targets, host, port)`` (HTTP, :mod:`.http`) and ``start_server(targets, host, port)`` (gRPC,
:mod:`.grpc`) serve the same operations (:mod:`.operations`) on the producers in
:class:`~queue_sidecar.publish.targets.PublishTargets`.
"""
