//! Structural verification of a `.tflite` flatbuffer before TF Lite 1.15 reads it.
//!
//! TF Lite's `FlatBufferModel::BuildFromBuffer` (what the `tflite` crate calls) does not verify the
//! buffer: a truncated or corrupt model makes it read out of bounds and crash the process. This
//! module runs the `flatbuffers` crate's verifier over the tables and fields of the TF Lite schema
//! (tensorflow/lite/schema/schema.fbs, as of 1.15, plus later fields newer converters write) that
//! the 1.15 interpreter reads: every offset, vector, string and scalar is inside the buffer.
//! Field ids are the schema's declaration order; a vtable offset is `4 + 2·id`.

use flatbuffers::{
    ForwardsUOffset, InvalidFlatbuffer, Vector, Verifiable, Verifier, VerifierOptions,
};

const fn vt(id: u16) -> u16 {
    4 + 2 * id
}

type Ints<'a> = ForwardsUOffset<Vector<'a, i32>>;
type Tables<'a, T> = ForwardsUOffset<Vector<'a, ForwardsUOffset<T>>>;
type Str<'a> = ForwardsUOffset<&'a str>;

/// `table Model { version; operator_codes; subgraphs; description; buffers; metadata_buffer;
/// metadata; }`
struct Model;
/// `table OperatorCode { deprecated_builtin_code: byte; custom_code; version; builtin_code: int }`
struct OperatorCode;
/// `table SubGraph { tensors; inputs; outputs; operators; name }`
struct SubGraph;
/// `table Tensor { shape; type; buffer; name; quantization; is_variable; sparsity; shape_signature }`
struct Tensor;
/// `table QuantizationParameters { min; max; scale; zero_point; details_type; details;
/// quantized_dimension }`
struct Quantization;
/// `table Operator { opcode_index; inputs; outputs; builtin_options_type; builtin_options;
/// custom_options; custom_options_format; mutating_variable_inputs; intermediates }`
struct Operator;
/// `table Buffer { data: [ubyte] }`
struct Buffer;
/// `table Metadata { name; buffer }`
struct Metadata;
/// A union member (builtin options): a table whose every present field is inside the buffer.
struct AnyTable;

impl Verifiable for Model {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("version", vt(0), false)?
            .visit_field::<Tables<OperatorCode>>("operator_codes", vt(1), false)?
            .visit_field::<Tables<SubGraph>>("subgraphs", vt(2), true)?
            .visit_field::<Str>("description", vt(3), false)?
            .visit_field::<Tables<Buffer>>("buffers", vt(4), false)?
            .visit_field::<Ints>("metadata_buffer", vt(5), false)?
            .visit_field::<Tables<Metadata>>("metadata", vt(6), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for OperatorCode {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("deprecated_builtin_code", vt(0), false)?
            .visit_field::<Str>("custom_code", vt(1), false)?
            .visit_field::<i32>("version", vt(2), false)?
            .visit_field::<i32>("builtin_code", vt(3), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for SubGraph {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<Tables<Tensor>>("tensors", vt(0), false)?
            .visit_field::<Ints>("inputs", vt(1), false)?
            .visit_field::<Ints>("outputs", vt(2), false)?
            .visit_field::<Tables<Operator>>("operators", vt(3), false)?
            .visit_field::<Str>("name", vt(4), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for Tensor {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<Ints>("shape", vt(0), false)?
            .visit_field::<i8>("type", vt(1), false)?
            .visit_field::<u32>("buffer", vt(2), false)?
            .visit_field::<Str>("name", vt(3), false)?
            .visit_field::<ForwardsUOffset<Quantization>>("quantization", vt(4), false)?
            .visit_field::<bool>("is_variable", vt(5), false)?
            .visit_field::<ForwardsUOffset<AnyTable>>("sparsity", vt(6), false)?
            .visit_field::<Ints>("shape_signature", vt(7), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for Quantization {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("min", vt(0), false)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("max", vt(1), false)?
            .visit_field::<ForwardsUOffset<Vector<f32>>>("scale", vt(2), false)?
            .visit_field::<ForwardsUOffset<Vector<i64>>>("zero_point", vt(3), false)?
            .visit_field::<u8>("details_type", vt(4), false)?
            .visit_field::<ForwardsUOffset<AnyTable>>("details", vt(5), false)?
            .visit_field::<i32>("quantized_dimension", vt(6), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for Operator {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("opcode_index", vt(0), false)?
            .visit_field::<Ints>("inputs", vt(1), false)?
            .visit_field::<Ints>("outputs", vt(2), false)?
            .visit_field::<u8>("builtin_options_type", vt(3), false)?
            .visit_field::<ForwardsUOffset<AnyTable>>("builtin_options", vt(4), false)?
            .visit_field::<ForwardsUOffset<Vector<u8>>>("custom_options", vt(5), false)?
            .visit_field::<i8>("custom_options_format", vt(6), false)?
            .visit_field::<ForwardsUOffset<Vector<bool>>>("mutating_variable_inputs", vt(7), false)?
            .visit_field::<Ints>("intermediates", vt(8), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for Buffer {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<Vector<u8>>>("data", vt(0), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for Metadata {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<Str>("name", vt(0), false)?
            .visit_field::<u32>("buffer", vt(1), false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for AnyTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        let mut t = v.visit_table(pos)?;
        // Every field the vtable lists: its first 4 bytes (the widest scalar or an offset in
        // builtin options) are in the buffer.
        let mut id = 0u16;
        while let Some(field_pos) = t.deref(vt(id))? {
            t.verifier().range_in_buffer(field_pos, 1)?;
            id += 1;
        }
        t.finish();
        Ok(())
    }
}

/// Verify `buf` as a TF Lite model: `Err` names what is out of bounds.
pub fn verify_model(buf: &[u8]) -> Result<(), String> {
    let opts = VerifierOptions::default();
    let mut v = Verifier::new(&opts, buf);
    <ForwardsUOffset<Model>>::run_verifier(&mut v, 0).map_err(|e| e.to_string())
}

fn u16_at(b: &[u8], p: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(p..p + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], p: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(p..p + 4)?.try_into().ok()?))
}

/// Where field `id` of the table at `t` is, if present (bounds-checked reads, no `unsafe`).
fn field(b: &[u8], t: usize, id: u16) -> Option<usize> {
    let soff = u32_at(b, t)? as i32 as i64;
    let vtab = usize::try_from(t as i64 - soff).ok()?;
    let vlen = u16_at(b, vtab)?;
    if vt(id) + 2 > vlen {
        return None;
    }
    match u16_at(b, vtab + vt(id) as usize)? {
        0 => None,
        o => Some(t + o as usize),
    }
}

/// Follow the offset stored at `p`.
fn deref(b: &[u8], p: usize) -> Option<usize> {
    p.checked_add(u32_at(b, p)? as usize)
}

/// The builtin op codes and versions of a model (`max(deprecated_builtin_code, builtin_code)`, as
/// TF Lite's schema utilities read them), for error messages; `None` if it does not verify.
#[cfg_attr(not(feature = "tflite"), allow(dead_code))]
pub fn op_codes(b: &[u8]) -> Option<Vec<(i32, i32)>> {
    verify_model(b).ok()?;
    let model = deref(b, 0)?;
    let vec = deref(b, field(b, model, 1)?)?;
    let n = u32_at(b, vec)? as usize;
    (0..n)
        .map(|i| {
            let t = deref(b, vec + 4 + 4 * i)?;
            let old = field(b, t, 0)
                .and_then(|p| b.get(p))
                .map_or(0, |v| *v as i8 as i32);
            let new = field(b, t, 3)
                .and_then(|p| u32_at(b, p))
                .map_or(0, |v| v as i32);
            let ver = field(b, t, 2)
                .and_then(|p| u32_at(b, p))
                .map_or(1, |v| v as i32);
            Some((old.max(new), ver))
        })
        .collect()
}
