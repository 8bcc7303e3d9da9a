use super::*;

// ---- error bodies -------------------------------------------------------------------

#[test]
fn error_codes_statuses_and_names() {
    let expected = [
        (ErrorCode::BadRequest, 400, "bad_request"),
        (ErrorCode::Unauthorized, 401, "unauthorized"),
        (ErrorCode::Forbidden, 403, "forbidden"),
        (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
        (ErrorCode::RequestTimeout, 408, "request_timeout"),
        (
            ErrorCode::UnsupportedMediaType,
            415,
            "unsupported_media_type",
        ),
        (ErrorCode::MethodNotAllowed, 405, "method_not_allowed"),
        (ErrorCode::NotFound, 404, "not_found"),
        (ErrorCode::RateLimited, 429, "rate_limited"),
        (ErrorCode::Overloaded, 503, "overloaded"),
        (ErrorCode::UpstreamError, 502, "upstream_error"),
        (ErrorCode::UpstreamTimeout, 504, "upstream_timeout"),
        (ErrorCode::Internal, 500, "internal"),
        (ErrorCode::ResponseFull, 413, "response_full"),
    ];
    assert_eq!(expected.len(), ErrorCode::ALL.len());
    for (code, status, name) in expected {
        assert_eq!((code.http_status(), code.as_str()), (status, name));
        // The serde names agree with as_str.
        assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        assert_eq!(ErrorCode::from_name(name), Some(code));
        // Only in a partial answer: a whole answer's 413 is payload_too_large.
        if code != ErrorCode::ResponseFull {
            assert_eq!(ErrorCode::from_http_status(status), code);
        }
        assert_eq!(code.to_string(), name);
    }
    assert_eq!(ErrorCode::from_http_status(418), ErrorCode::BadRequest);
    assert_eq!(ErrorCode::from_http_status(501), ErrorCode::Internal);
    assert_eq!(ErrorCode::from_name("Bad_Request"), None);
}

#[test]
fn protocol_error_codes() {
    assert_eq!(
        ProtocolError::BodyTooLarge { size: 2, max: 1 }.code(),
        ErrorCode::PayloadTooLarge
    );
    for e in [
        ProtocolError::EmptyRequest,
        req_err("{"),
        resp_err(std::str::from_utf8(BAD_LAT).unwrap()),
    ] {
        assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
    }
    let body = ErrorBody::from(&ProtocolError::EmptyRequest);
    assert_eq!(body.code, ErrorCode::BadRequest);
    assert_eq!(body.message, ProtocolError::EmptyRequest.to_string());
}

#[test]
fn error_body_round_trip_and_leniency() {
    let e = decode_error(ERROR).unwrap();
    assert_eq!(
        e,
        ErrorBody {
            code: ErrorCode::RateLimited,
            message: "too many requests: at most 10 per second are allowed".into()
        }
    );
    for code in ErrorCode::ALL {
        let body = ErrorBody {
            code,
            message: "m \"q\"".into(),
        };
        assert_eq!(decode_error(body.to_json().as_bytes()), Some(body));
    }
    let e = decode_error(br#"{"error":{"code":"teapot","message":"nope"}}"#).unwrap();
    assert_eq!(e.code, ErrorCode::Internal);
    assert_eq!(e.message, "nope (error code \"teapot\")");
    let e = decode_error(br#"{"error":{"code":"not_found"}}"#).unwrap();
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, ""));
    let long = "é".repeat(5000);
    let body = format!(r#"{{"error":{{"code":"internal","message":"{long}"}}}}"#);
    assert_eq!(
        decode_error(body.as_bytes())
            .unwrap()
            .message
            .chars()
            .count(),
        MAX_ERROR_MESSAGE_CHARS
    );
    for bad in [
        &b""[..],
        b"Bad Gateway",
        b"{}",
        br#"{"error":"boom"}"#,
        br#"{"error":{"code":5,"message":"x"}}"#,
    ] {
        assert_eq!(
            decode_error(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let huge = format!(
        r#"{{"error":{{"code":"internal","message":"{}"}}}}"#,
        "x".repeat(MAX_ERROR_BODY_BYTES)
    );
    assert_eq!(decode_error(huge.as_bytes()), None);
}
