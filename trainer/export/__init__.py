"""From a trained run to what a device loads: quantization-aware fine-tuning, full-INT8 TFLite, the QDQ INT8 ONNX
twin, the bundle; and the detector's INT8 copy (``trainer quantize-detector``)."""
