"""The files pnndeploy reads and writes: ONNX models, HDF5 profiles and deployments, process specs, YAML."""
