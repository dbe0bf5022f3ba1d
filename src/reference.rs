//! Image references (`busybox`, `localhost:5000/x:1`, `name@sha256:...`), normalised as docker does.
