//! Kafka Connect schemas (the JsonConverter's `schema` half) to column specs.
//! Parsed once per distinct schema text and cached by the decoder.

use serde_json::Value as Json;

use crate::model::{Column, ColumnType, DecimalParams};

/// How to turn one field's JSON value into a typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Encoding {
    Boolean,
    Int,
    Float,
    Text,
    /// base64 bytes.
    Bytes,
    /// Connect `Decimal`: base64 bytes or a JSON number, with this scale.
    Decimal {
        scale: u32,
    },
    /// `io.debezium.data.VariableScaleDecimal`: `{scale, value}`.
    VariableScaleDecimal,
    /// Integer date (days).
    Date,
    /// Integer time of day in this unit.
    Time(super::temporal::TimeUnit),
    /// Integer local timestamp in this unit.
    LocalTimestamp(super::temporal::TimeUnit),
    /// ISO text with offset.
    ZonedTimestamp,
    /// ISO text of a local date / time / date-time.
    IsoDate,
    IsoTime,
    IsoLocalTimestamp,
    /// JSON document carried as text.
    JsonText,
    /// A nested struct, array or map, stored as JSON.
    Nested,
}

/// One field of a row struct.
#[derive(Clone, Debug)]
pub struct FieldSpec {
    pub column: Column,
    pub encoding: Encoding,
}

/// Column specs of the row (`before`/`after`) struct of an envelope schema.
#[derive(Debug)]
pub struct RowSchema {
    pub fields: Vec<FieldSpec>,
}

/// Find the row struct in an envelope schema and parse its fields.
pub fn parse_envelope_schema(schema: &Json) -> Result<RowSchema, String> {
    let fields = schema
        .get("fields")
        .and_then(Json::as_array)
        .ok_or("schema has no `fields`")?;
    let row = fields
        .iter()
        .find(|f| f.get("field").and_then(Json::as_str) == Some("after"))
        .or_else(|| {
            fields
                .iter()
                .find(|f| f.get("field").and_then(Json::as_str) == Some("before"))
        })
        .ok_or("schema has neither an `after` nor a `before` field")?;
    let row_fields = row
        .get("fields")
        .and_then(Json::as_array)
        .ok_or("row schema has no `fields`")?;
    let fields = row_fields
        .iter()
        .map(parse_field)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RowSchema { fields })
}

/// Field names of a key schema, in order.
pub fn key_field_names(schema: &Json) -> Option<Vec<String>> {
    let fields = schema.get("fields")?.as_array()?;
    fields
        .iter()
        .map(|f| f.get("field").and_then(Json::as_str).map(str::to_string))
        .collect()
}

fn parse_field(f: &Json) -> Result<FieldSpec, String> {
    use super::temporal::TimeUnit::*;
    let name = f
        .get("field")
        .and_then(Json::as_str)
        .ok_or("schema field without a name")?;
    let ty = f.get("type").and_then(Json::as_str).unwrap_or("");
    let logical = f.get("name").and_then(Json::as_str).unwrap_or("");
    let nullable = f.get("optional").and_then(Json::as_bool).unwrap_or(true);
    let params = f.get("parameters");
    let param = |k: &str| {
        params.and_then(|p| p.get(k)).and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| Some(v.to_string()))
        })
    };
    let mut decimal = None;
    let (col_ty, enc) = match (logical, ty) {
        ("org.apache.kafka.connect.data.Decimal", _) => {
            let scale: u32 = param("scale")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("Decimal field `{name}` has no `scale` parameter"))?;
            decimal = Some(DecimalParams {
                precision: param("connect.decimal.precision").and_then(|s| s.parse().ok()),
                scale: Some(scale),
            });
            (ColumnType::Decimal, Encoding::Decimal { scale })
        }
        ("io.debezium.data.VariableScaleDecimal", _) => {
            decimal = Some(DecimalParams::default());
            (ColumnType::Decimal, Encoding::VariableScaleDecimal)
        }
        ("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date", _) => {
            (ColumnType::Date, Encoding::Date)
        }
        ("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time", _) => {
            (ColumnType::Time, Encoding::Time(Ms))
        }
        ("io.debezium.time.MicroTime", _) => (ColumnType::Time, Encoding::Time(Us)),
        ("io.debezium.time.NanoTime", _) => (ColumnType::Time, Encoding::Time(Ns)),
        ("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp", _) => {
            (ColumnType::LocalTimestamp, Encoding::LocalTimestamp(Ms))
        }
        ("io.debezium.time.MicroTimestamp", _) => {
            (ColumnType::LocalTimestamp, Encoding::LocalTimestamp(Us))
        }
        ("io.debezium.time.NanoTimestamp", _) => {
            (ColumnType::LocalTimestamp, Encoding::LocalTimestamp(Ns))
        }
        ("io.debezium.time.ZonedTimestamp", _) => (ColumnType::Timestamp, Encoding::ZonedTimestamp),
        ("io.debezium.time.IsoDate", _) => (ColumnType::Date, Encoding::IsoDate),
        ("io.debezium.time.IsoTime", _) => (ColumnType::Time, Encoding::IsoTime),
        ("io.debezium.time.IsoTimestamp", _) => {
            (ColumnType::LocalTimestamp, Encoding::IsoLocalTimestamp)
        }
        ("io.debezium.data.Json", _) => (ColumnType::Json, Encoding::JsonText),
        (_, "boolean") => (ColumnType::Boolean, Encoding::Boolean),
        (_, "int8" | "int16" | "int32" | "int64") => (ColumnType::Int, Encoding::Int),
        (_, "float" | "float32" | "float64" | "double") => (ColumnType::Float, Encoding::Float),
        (_, "string") => (ColumnType::Text, Encoding::Text),
        (_, "bytes") => (ColumnType::Bytes, Encoding::Bytes),
        (_, "struct" | "array" | "map") => (ColumnType::Json, Encoding::Nested),
        (l, t) => return Err(format!("field `{name}` has unsupported type `{t}` ({l})")),
    };
    Ok(FieldSpec {
        column: Column {
            name: name.to_string(),
            ty: col_ty,
            nullable,
            decimal,
        },
        encoding: enc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_schema() {
        let schema: Json = serde_json::from_str(
            r#"{"type":"struct","fields":[
              {"type":"struct","field":"before","optional":true,"fields":[]},
              {"type":"struct","field":"after","optional":true,"fields":[
                {"type":"int64","optional":false,"field":"order_id"},
                {"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"12"},"field":"amount"},
                {"type":"int64","optional":false,"name":"io.debezium.time.MicroTimestamp","field":"placed_at"},
                {"type":"string","optional":true,"field":"note"}]}]}"#,
        )
        .unwrap();
        let row = parse_envelope_schema(&schema).unwrap();
        let names: Vec<_> = row.fields.iter().map(|f| f.column.name.as_str()).collect();
        assert_eq!(names, ["order_id", "amount", "placed_at", "note"]);
        assert_eq!(row.fields[1].encoding, Encoding::Decimal { scale: 2 });
        assert_eq!(row.fields[1].column.decimal.unwrap().precision, Some(12));
        assert_eq!(row.fields[2].column.ty, ColumnType::LocalTimestamp);
        assert!(row.fields[3].column.nullable && !row.fields[0].column.nullable);
    }

    #[test]
    fn decimal_without_scale_is_an_error() {
        let schema: Json = serde_json::from_str(
            r#"{"fields":[{"field":"after","fields":[{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","field":"x"}]}]}"#,
        )
        .unwrap();
        assert!(parse_envelope_schema(&schema)
            .unwrap_err()
            .contains("scale"));
    }
}
