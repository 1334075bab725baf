//! S3-compatible object storage named by URL (`s3://BUCKET/PREFIX`), through
//! the `object_store` crate. Credentials, region and endpoint come from the
//! standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for an endpoint without TLS), as
//! the AWS CLI and SDKs read them.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;

#[derive(Debug, thiserror::Error)]
pub enum ObjectUrlError {
    #[error(
        "{url:?} is not an object storage URL: use s3://BUCKET or s3://BUCKET/PREFIX (or file:///PATH for a shared file system)"
    )]
    Scheme { url: String },
    #[error("{url:?} names no bucket: use s3://BUCKET or s3://BUCKET/PREFIX")]
    NoBucket { url: String },
    #[error("{url:?}: the prefix {prefix:?} is not a valid object path ({reason})")]
    Prefix { url: String, prefix: String, reason: String },
    #[error(
        "cannot use {url}: {source} (credentials, region and endpoint come from AWS_ACCESS_KEY_ID, \
         AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL and AWS_ALLOW_HTTP)"
    )]
    Build { url: String, source: object_store::Error },
}

/// A bucket and a prefix within it.
#[derive(Debug, Clone)]
pub struct ObjectLocation {
    pub store: Arc<dyn ObjectStore>,
    /// Where the objects go in the bucket (empty: at its root).
    pub prefix: ObjectPath,
    /// The URL it was opened from, for messages.
    pub url: String,
}

impl ObjectLocation {
    /// The object for `rel` (a relative path of plain names) under the prefix.
    pub fn object(&self, rel: &str) -> ObjectPath {
        rel.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |path, part| path.clone().join(part))
    }

    /// `object` relative to the prefix, if it is under it.
    pub fn relative(&self, object: &ObjectPath) -> Option<String> {
        let parts: Vec<String> = object.prefix_match(&self.prefix)?.map(|p| p.as_ref().to_string()).collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }
}

/// Whether `s` names object storage rather than a local path.
pub fn is_object_url(s: &str) -> bool {
    s.starts_with("s3://")
}

/// Opens `s3://BUCKET[/PREFIX]` with the AWS environment's settings.
pub fn open(url: &str) -> Result<ObjectLocation, ObjectUrlError> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| ObjectUrlError::Scheme { url: url.to_string() })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ObjectUrlError::NoBucket { url: url.to_string() });
    }
    let prefix_path = ObjectPath::parse(prefix.trim_matches('/')).map_err(|e| ObjectUrlError::Prefix {
        url: url.to_string(),
        prefix: prefix.to_string(),
        reason: e.to_string(),
    })?;
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|source| ObjectUrlError::Build { url: url.to_string(), source })?;
    Ok(ObjectLocation { store: Arc::new(store), prefix: prefix_path, url: url.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let loc = open("s3://backups/tocsin/prod/").expect("open");
        assert_eq!(loc.prefix.as_ref(), "tocsin/prod");
        let obj = loc.object("segments/public/cpu/1.parquet");
        assert_eq!(obj.as_ref(), "tocsin/prod/segments/public/cpu/1.parquet");
        assert_eq!(loc.relative(&obj).as_deref(), Some("segments/public/cpu/1.parquet"));
        assert_eq!(loc.relative(&ObjectPath::from("other/x")), None);
        let root = open("s3://backups").expect("open");
        assert_eq!(root.object("backup.json").as_ref(), "backup.json");
        assert!(matches!(open("s3:///x"), Err(ObjectUrlError::NoBucket { .. })));
        assert!(matches!(open("/tmp/x"), Err(ObjectUrlError::Scheme { .. })));
        assert!(is_object_url("s3://b") && !is_object_url("./s3:/b"));
    }
}
