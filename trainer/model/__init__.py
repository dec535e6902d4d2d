"""The network: ResNet with CBAM (its configuration and builder), widening a trained one, and the test-time views
it is shown. Nothing here reads a run or a dataset."""
