"""Deployment: ONNX export of the whole detector (`export`), int8 quantization (`quantize`) and truncated SVD
of fc6 / fc7 (`svd`). The opset range lives here so that tools can show it without importing torch."""

MIN_OPSET, DEFAULT_OPSET = 11, 17  # 11: Resize with sizes, NonMaxSuppression with inputs; 16: RoiAlign aligned
