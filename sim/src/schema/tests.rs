use serde_json::json;

use super::*;

/// Each keyword rejects what it should, naming the instance path; and accepts the rest.
#[test]
fn each_keyword_rejects_naming_the_path() {
    // (schema, instance, the path every problem must start with; None = valid)
    let cases: &[(Value, Value, Option<&str>)] = &[
        (json!({"type": "string"}), json!("x"), None),
        (
            json!({"type": "string"}),
            json!(1),
            Some("$: must be string"),
        ),
        (json!({"type": ["string", "null"]}), json!(null), None),
        (
            json!({"type": ["string", "null"]}),
            json!(true),
            Some("$: must be string or null"),
        ),
        (json!({"type": "integer"}), json!(7), None),
        (json!({"type": "integer"}), json!(-7), None),
        (
            json!({"type": "integer"}),
            json!(1.5),
            Some("$: must be integer"),
        ),
        (
            json!({"type": "integer"}),
            json!(300.0),
            Some("$: must be integer"),
        ),
        (json!({"type": "number"}), json!(1.5), None),
        (json!({"type": "number"}), json!(2), None),
        (
            json!({"properties": {"a": {"type": "boolean"}}}),
            json!({"a": 1}),
            Some("$.a: must be boolean"),
        ),
        (
            json!({"properties": {"a": {"type": "boolean"}}}),
            json!({"b": 1}),
            None,
        ),
        (
            json!({"required": ["a"]}),
            json!({"b": 1}),
            Some("$.a: is required"),
        ),
        (json!({"required": ["a"]}), json!([1]), None),
        (
            json!({"properties": {"a": true}, "additionalProperties": false}),
            json!({"a": 1, "b": 2}),
            Some("$.b: is not allowed"),
        ),
        (
            json!({"properties": {"a": true}, "additionalProperties": {"type": "string"}}),
            json!({"a": 1, "b": 2}),
            Some("$.b: must be string"),
        ),
        (
            json!({"items": {"type": "string"}}),
            json!(["a", 2]),
            Some("$[1]: must be string"),
        ),
        (json!({"enum": ["a", null]}), json!(null), None),
        (
            json!({"enum": ["a", null]}),
            json!("b"),
            Some("$: \"b\" is not one of"),
        ),
        (json!({"const": 3}), json!(4), Some("$: must be 3")),
        (json!({"const": 3}), json!(3), None),
        (
            json!({"minimum": 100}),
            json!(99),
            Some("$: must be at least 100"),
        ),
        (json!({"minimum": 100}), json!(100), None),
        (
            json!({"minimum": 0}),
            json!(-1),
            Some("$: must be at least 0"),
        ),
        (
            json!({"maximum": 8192}),
            json!(8193),
            Some("$: must be at most 8192"),
        ),
        (json!({"maximum": 8192}), json!("8193"), None),
        (
            json!({"maximum": 18446744073709551615u64}),
            json!(18446744073709551615u64),
            None,
        ),
        (
            json!({"minLength": 1}),
            json!(""),
            Some("$: must be at least 1 characters"),
        ),
        (
            json!({"maxLength": 2}),
            json!("abc"),
            Some("$: must be at most 2 characters"),
        ),
        (json!({"maxLength": 2}), json!("éé"), None),
        (
            json!({"minItems": 1}),
            json!([]),
            Some("$: must hold at least 1 items"),
        ),
        (
            json!({"maxItems": 1}),
            json!([1, 2]),
            Some("$: must hold at most 1 items"),
        ),
        (json!({"maxItems": 0}), json!({}), None),
        (
            json!({"$defs": {"n": {"type": "integer"}}, "properties": {"x": {"items": {"$ref": "#/$defs/n"}}}}),
            json!({"x": [1, "two"]}),
            Some("$.x[1]: must be integer"),
        ),
        (
            json!({"properties": {"acks": {"$ref": "acks.schema.json"}}}),
            json!({"acks": [""]}),
            Some("$.acks[0]: must be at least 1 characters"),
        ),
        (false.into(), json!(1), Some("$: not allowed here")),
    ];
    for (schema, instance, want) in cases {
        let problems = validate_with(schema, instance);
        match want {
            None => assert!(problems.is_empty(), "{schema} / {instance}: {problems:?}"),
            Some(prefix) => {
                assert!(!problems.is_empty(), "{schema} / {instance} passed");
                assert!(
                    problems.iter().all(|p| p.starts_with(prefix)),
                    "{schema} / {instance}: {problems:?}, want {prefix}"
                );
            }
        }
    }
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let schema = json!({
        "required": ["a", "b"],
        "properties": {"c": {"type": "string"}},
        "additionalProperties": false
    });
    let problems = validate_with(&schema, &json!({"c": 1, "d": 2}));
    assert_eq!(problems.len(), 4, "{problems:?}");
}

#[test]
fn a_schema_the_validator_cannot_honour_is_a_problem_not_a_pass() {
    for schema in [
        json!({"pattern": "^a$"}),
        json!({"oneOf": [true]}),
        json!({"$ref": "#/definitions/x"}),
        json!({"$ref": "#/$defs/missing"}),
        json!({"$ref": "other.schema.json"}),
        json!({"type": "text"}),
        json!({"maxLength": -1}),
    ] {
        let problems = validate_with(&schema, &json!("a"));
        assert!(
            problems.iter().any(|p| p.contains("schema error")),
            "{schema}: {problems:?}"
        );
    }
}

#[test]
fn a_circular_ref_ends() {
    let schema = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
    assert!(!validate_with(&schema, &json!(1)).is_empty());
}

#[test]
fn the_published_schemas_parse_and_use_only_supported_keywords() {
    let samples = [
        json!(null),
        json!({}),
        json!([]),
        json!({"ops": [{}], "guests": [{}], "host": {}, "ack_signed_op_results": [1]}),
    ];
    for (name, _) in SCHEMAS {
        let doc = document(name).unwrap();
        for sample in &samples {
            for problem in validate(name, sample) {
                assert!(!problem.contains("schema error"), "{name}: {problem}");
            }
        }
        assert!(
            doc.get("$schema") == Some(&json!("https://json-schema.org/draft/2020-12/schema")),
            "{name}"
        );
        assert!(
            doc["$id"].as_str().is_some_and(|id| id.ends_with(name)),
            "{name}: its $id names its file"
        );
    }
}

#[test]
fn the_golden_report_validates() {
    let golden: Value = serde_json::from_str(crate::contract::CONTRACT).unwrap();
    assert_eq!(validate(HOST_REPORT, &golden), Vec::<String>::new());
    let mut extra = golden.clone();
    extra["host"]["kernel"] = json!("6.8");
    extra["guests"][0]["status"] = json!("paused");
    extra["restore_tests"] = json!([{}]);
    let problems = validate(HOST_REPORT, &extra);
    assert!(
        problems.iter().any(|p| p.starts_with("$.host.kernel:")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("$.guests[0].status:")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("$.restore_tests[0].vmid: is required")),
        "{problems:?}"
    );
}
