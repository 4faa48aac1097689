{
  "targets": [{
    "target_name": "vmdi_sys",
    "sources": ["vmdi_sys.c"],
    "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
  }]
}
