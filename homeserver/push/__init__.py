"""Push: push rules, notification counts, push gateways."""
