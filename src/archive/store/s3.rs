//! S3 (and S3-compatible stores) through aws-sdk-s3: `s3://bucket/prefix`,
//! with an optional endpoint URL, region and path-style addressing, and
//! credentials from the standard AWS chain (env, profile, SSO, IMDS, ...).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{ObjectInfo, ObjectStore, S3Options, StoreError};

/// Objects above this size go up in parts of this size (S3 allows 5 MiB to 5 GiB per part).
const MULTIPART_PART: u64 = 64 << 20;
/// Objects above this size come down in ranges of this size, several at once:
/// one stream per object leaves most of a link's bandwidth unused.
const RANGE: u64 = 16 << 20;
const RANGES_AT_ONCE: usize = 4;

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    pub async fn new(bucket: &str, prefix: &str, options: &S3Options) -> S3Store {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        // A store that takes packets and answers none (a black-holed link) must
        // fail an attempt, so the retry loop sees an outage instead of a hang.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_secs(30))
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            .timeout_config(timeouts);
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        S3Store {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        path: &std::path::Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        while offset < size {
            let length = MULTIPART_PART.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(aws_sdk_s3::primitives::Length::Exact(length))
                .build()
                .await
                .map_err(|e| self.local_error(key, e))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(body)
                .send()
                .await
                .map_err(|e| self.error("put", key, e))?;
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
            offset += length;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(())
    }

    /// The object, or the bytes `first..=last` of it.
    async fn get_object(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_range(range.map(|(first, last)| format!("bytes={first}-{last}")))
            .send()
            .await
            .map_err(|e| self.error("get", key, e))
    }

    /// Streams a body into `file` from where it stands; returns the bytes written.
    async fn write_body(
        &self,
        key: &str,
        body: ByteStream,
        mut file: tokio::fs::File,
    ) -> Result<u64, StoreError> {
        let mut body = body.into_async_read();
        let written = tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| self.unavailable(key, e.to_string()))?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| self.local_error(key, e))?;
        Ok(written)
    }

    fn unavailable(&self, key: &str, message: String) -> StoreError {
        StoreError::Unavailable {
            store: self.describe(),
            action: "get",
            key: key.to_string(),
            message,
        }
    }

    fn local_error(&self, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Refused {
            store: self.describe(),
            action: "put",
            key: key.to_string(),
            message: format!("reading the local file: {e}"),
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn error<E>(
        &self,
        action: &'static str,
        key: &str,
        error: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let store = self.describe();
        let key = key.to_string();
        let status = error.raw_response().map(|r| r.status().as_u16());
        if status == Some(404) && action != "list" {
            return StoreError::NotFound { store, key };
        }
        let message = match error.code() {
            Some(code) => format!("{code}: {}", error.message().unwrap_or("")),
            None => std::error::Error::source(&error)
                .map(|s| s.to_string())
                .unwrap_or_else(|| error.to_string()),
        };
        let retryable = match &error {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => true,
            _ => status.is_none_or(|s| s >= 500 || s == 429 || s == 408),
        };
        if retryable {
            StoreError::Unavailable {
                store,
                action,
                key,
                message,
            }
        } else {
            StoreError::Refused {
                store,
                action,
                key,
                message,
            }
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from(data))
            .set_metadata(Some(metadata))
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(())
    }

    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| self.local_error(key, e))?
            .len();
        let metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
        let full_key = self.full_key(key);
        if size <= MULTIPART_PART {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| self.local_error(key, e))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .body(body)
                .set_metadata(Some(metadata))
                .send()
                .await
                .map_err(|e| self.error("put", key, e))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .set_metadata(Some(metadata))
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = self
            .upload_parts(key, &full_key, &upload_id, path, size)
            .await;
        if result.is_err() {
            // Leave no half-uploaded parts behind to be billed for.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full_key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let output = self.get_object(key, None).await?;
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable {
                store: self.describe(),
                action: "get",
                key: key.to_string(),
                message: e.to_string(),
            })?;
        Ok(body.into_bytes())
    }

    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> Result<u64, StoreError> {
        let size = match self.head(key).await? {
            Some(info) => info.size,
            None => {
                return Err(StoreError::NotFound {
                    store: self.describe(),
                    key: key.to_string(),
                })
            }
        };
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| self.local_error(key, e))?;
        if size <= RANGE {
            let output = self.get_object(key, None).await?;
            return self.write_body(key, output.body, file).await;
        }
        file.set_len(size)
            .await
            .map_err(|e| self.local_error(key, e))?;
        drop(file);
        // Each range writes its own stretch of the file, through its own handle.
        let ranges = (0..size.div_ceil(RANGE)).map(|i| (i * RANGE, (i * RANGE + RANGE).min(size)));
        let fetches = ranges.map(|(start, end)| async move {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .await
                .map_err(|e| self.local_error(key, e))?;
            tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| self.local_error(key, e))?;
            let output = self.get_object(key, Some((start, end - 1))).await?;
            let written = self.write_body(key, output.body, file).await?;
            if written != end - start {
                return Err(self.unavailable(
                    key,
                    format!("range {start}-{} gave {written} bytes", end - 1),
                ));
            }
            Ok(written)
        });
        let written: Vec<u64> = futures_util::stream::iter(fetches)
            .buffer_unordered(RANGES_AT_ONCE)
            .try_collect()
            .await?;
        Ok(written.into_iter().sum())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = self.full_key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                out.push(ObjectInfo {
                    key: key[strip..].to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    metadata: BTreeMap::new(),
                    modified: object
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("delete", key, e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: output.content_length().unwrap_or(0).max(0) as u64,
                metadata: output
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                modified: output
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            })),
            Err(e) => match self.error("head", key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
