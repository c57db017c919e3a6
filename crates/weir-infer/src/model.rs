//! The TF Lite runtime: a model file loaded into TF Lite 1.15's own C++ interpreter (the `tflite`
//! crate, feature `tflite`), checked against what a detector expects.
//!
//! Invariants: a [`Model`] has exactly one float32 input tensor and one float32 output tensor,
//! both of `[1, n]` (or `[n]`) shape, and was allocated before it is returned; [`Model::run`]
//! never allocates.

use std::path::{Path, PathBuf};

/// A model could not be loaded or does not fit its detector.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a TF Lite model (no `TFL3` flatbuffer identifier; truncated or another format?)")]
    NotTflite { path: PathBuf },
    #[error("`{path}` is truncated or corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("`{path}`: TF Lite cannot parse the model: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{path}`: {message}. Hint: the bundled runtime is TF Lite 1.15: convert float32 without `optimizations` (no quantization) and with only ops and op versions 1.15 had (README: Anomaly detectors)")]
    UnsupportedOp { path: PathBuf, message: String },
    #[error("`{path}`: {message}")]
    Shape { path: PathBuf, message: String },
    #[error("`{path}`: inference failed: {message}")]
    Invoke { path: PathBuf, message: String },
    #[error("this build of weir has no TF Lite runtime (cargo feature `tflite`)")]
    NoRuntime,
}

/// Read a model file and check it is a TF Lite flatbuffer (identifier `TFL3` at bytes 4..8, the
/// schema's `file_identifier`) whose tables are all inside the file ([`crate::verify`]), so a
/// truncated or foreign file is named as such before TF Lite (which does not verify) sees it.
pub fn read_model_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 8 || &bytes[4..8] != b"TFL3" {
        return Err(ModelError::NotTflite {
            path: path.to_path_buf(),
        });
    }
    crate::verify::verify_model(&bytes).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        message: e,
    })?;
    Ok(bytes)
}

#[cfg(feature = "tflite")]
mod runtime {
    use super::*;
    use tflite::ops::builtin::BuiltinOpResolver;
    use tflite::{FlatBufferModel, Interpreter, InterpreterBuilder};

    /// A loaded, allocated model.
    pub struct Model {
        path: PathBuf,
        interpreter: Interpreter<'static, BuiltinOpResolver>,
        input: i32,
        output: i32,
        input_len: usize,
        output_len: usize,
    }

    impl std::fmt::Debug for Model {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Model")
                .field("path", &self.path)
                .field("input_len", &self.input_len)
                .field("output_len", &self.output_len)
                .finish()
        }
    }

    fn flat_len(dims: &[usize]) -> Option<usize> {
        match dims {
            [n] | [1, n] => Some(*n),
            _ => None,
        }
    }

    impl Model {
        /// Load `path` and check it takes `input_len` floats and gives `output_len` floats.
        pub fn load(path: &Path, input_len: usize, output_len: usize) -> Result<Self, ModelError> {
            let bytes = read_model_file(path)?;
            let p = || path.to_path_buf();
            let fb = FlatBufferModel::build_from_buffer(bytes).map_err(|e| ModelError::Parse {
                path: p(),
                message: e.to_string(),
            })?;
            let builder =
                InterpreterBuilder::new(fb, BuiltinOpResolver::default()).map_err(|e| {
                    ModelError::Parse {
                        path: p(),
                        message: e.to_string(),
                    }
                })?;
            // TF Lite's InterpreterBuilder fails when an op (or op version) has no kernel in the
            // resolver; name the ones the model asks for.
            let mut interpreter = builder.build().map_err(|e| ModelError::UnsupportedOp {
                path: p(),
                message: format!(
                    "the interpreter cannot be built ({e}); the model's ops are {}",
                    describe_ops(path)
                ),
            })?;
            interpreter
                .allocate_tensors()
                .map_err(|e| ModelError::Shape {
                    path: p(),
                    message: format!("cannot allocate tensors: {e}"),
                })?;
            let (ins, outs) = (
                interpreter.inputs().to_vec(),
                interpreter.outputs().to_vec(),
            );
            if ins.len() != 1 || outs.len() != 1 {
                return Err(ModelError::Shape {
                    path: p(),
                    message: format!(
                        "has {} input and {} output tensors; a detector needs one of each",
                        ins.len(),
                        outs.len()
                    ),
                });
            }
            let check = |idx: i32, what: &str, want: usize| -> Result<usize, ModelError> {
                let info = interpreter
                    .tensor_info(idx)
                    .ok_or_else(|| ModelError::Shape {
                        path: p(),
                        message: format!("no {what} tensor"),
                    })?;
                if info.element_kind != tflite::context::ElementKind::kTfLiteFloat32 {
                    return Err(ModelError::Shape {
                        path: p(),
                        message: format!(
                            "{what} tensor `{}` is {:?}; a detector needs float32",
                            info.name, info.element_kind
                        ),
                    });
                }
                match flat_len(&info.dims) {
                    Some(n) if n == want => Ok(n),
                    _ => Err(ModelError::Shape {
                        path: p(),
                        message: format!(
                            "{what} tensor `{}` has shape {:?}; the detector config needs [1, {want}]",
                            info.name, info.dims
                        ),
                    }),
                }
            };
            let input_len = check(ins[0], "input", input_len)?;
            let output_len = check(outs[0], "output", output_len)?;
            Ok(Model {
                path: p(),
                interpreter,
                input: ins[0],
                output: outs[0],
                input_len,
                output_len,
            })
        }

        /// Run the model on `input` (its length is the input tensor's) and copy the output into
        /// `out`.
        pub fn run(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
            let err = |m: String| ModelError::Invoke {
                path: self.path.clone(),
                message: m,
            };
            debug_assert_eq!(input.len(), self.input_len);
            self.interpreter
                .tensor_data_mut::<f32>(self.input)
                .map_err(|e| err(e.to_string()))?
                .copy_from_slice(input);
            self.interpreter.invoke().map_err(|e| err(e.to_string()))?;
            let o = self
                .interpreter
                .tensor_data::<f32>(self.output)
                .map_err(|e| err(e.to_string()))?;
            out.copy_from_slice(&o[..self.output_len]);
            Ok(())
        }

        pub fn input_len(&self) -> usize {
            self.input_len
        }
        pub fn output_len(&self) -> usize {
            self.output_len
        }
    }

    /// The builtin operator codes and versions a model asks for, from its flatbuffer (for
    /// error messages).
    fn describe_ops(path: &Path) -> String {
        match tflite::model::Model::from_file(path) {
            Ok(m) => m
                .operator_codes
                .iter()
                .map(|c| format!("{:?} v{}", c.builtin_code, c.version))
                .collect::<Vec<_>>()
                .join(", "),
            // Op codes newer than 1.15's schema: list them by number from the flatbuffer.
            Err(_) => match std::fs::read(path)
                .ok()
                .and_then(|b| crate::verify::op_codes(&b))
            {
                Some(ops) => {
                    ops.iter()
                        .map(|(code, v)| format!("builtin op {code} v{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + " (codes above 126 are newer than TF Lite 1.15)"
                }
                None => "unknown".to_string(),
            },
        }
    }
}

#[cfg(feature = "tflite")]
pub use runtime::Model;

/// Without the runtime: loading a model is an error `weir check` reports.
#[cfg(not(feature = "tflite"))]
#[derive(Debug)]
pub struct Model(());

#[cfg(not(feature = "tflite"))]
impl Model {
    pub fn load(path: &Path, _input_len: usize, _output_len: usize) -> Result<Self, ModelError> {
        read_model_file(path)?;
        Err(ModelError::NoRuntime)
    }
    pub fn run(&mut self, _input: &[f32], _out: &mut [f32]) -> Result<(), ModelError> {
        Err(ModelError::NoRuntime)
    }
    pub fn input_len(&self) -> usize {
        0
    }
    pub fn output_len(&self) -> usize {
        0
    }
}
