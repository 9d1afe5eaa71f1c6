//! The framework's ceiling: a bare tonic server of the same `resultstore.v1` service that
//! answers Resolve with bytes already in memory and Put with a fixed reference, doing
//! nothing else. It runs with the same transport settings as resultstore (TCP_NODELAY,
//! the same message limits), so the difference between the two is resultstore's own work.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use resultstore_proto::v1 as pb;
use resultstore_proto::v1::result_store_server::{ResultStore, ResultStoreServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// Values by key, and the reference every reply carries.
pub struct Bare {
    values: Arc<HashMap<String, Bytes>>,
    reference: pb::Reference,
}

/// Serves `values` on 127.0.0.1:0 in the current runtime; returns the address.
pub async fn serve(values: HashMap<String, Bytes>, max_message: usize) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reference = pb::Reference {
        block: "memory/default".into(),
        key: "k".into(),
        serializer: Some(pb::Serializer { r#type: "json".into(), config_json: r#"{"type":"json"}"#.into() }),
        size: 1024,
        sha256: "0".repeat(64),
        persisted: Some(true),
        uri: "memory:///k".into(),
        format: "prefect3".into(),
        ..Default::default()
    };
    let service = ResultStoreServer::new(Bare { values: Arc::new(values), reference })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let incoming = TcpListenerStream::new(listener).map_ok(|s| {
        let _ = s.set_nodelay(true);
        s
    });
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    Ok(addr)
}

#[tonic::async_trait]
impl ResultStore for Bare {
    async fn put(&self, _r: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(pb::PutResponse { result: Some(pb::put_response::Result::Reference(self.reference.clone())) }))
    }
    async fn put_stream(
        &self,
        _r: Request<Streaming<pb::PutStreamRequest>>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type GetStreamStream = BoxStream<'static, Result<pb::GetStreamResponse, Status>>;
    async fn get_stream(&self, _r: Request<pb::GetRequest>) -> Result<Response<Self::GetStreamStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get(&self, _r: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn resolve(&self, r: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let key = match r.into_inner().target {
            Some(pb::resolve_request::Target::Location(l)) => l.key,
            _ => return Err(Status::invalid_argument("bare: locations only")),
        };
        let data = self.values.get(&key).cloned().ok_or_else(|| Status::not_found(key))?;
        Ok(Response::new(pb::ResolveResponse {
            reference: Some(self.reference.clone()),
            value: Some(pb::resolve_response::Value::Data(data)),
            value_serializer: "json".into(),
            cache_hit: true,
        }))
    }
    async fn exists(&self, _r: Request<pb::ExistsRequest>) -> Result<Response<pb::ExistsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn delete(&self, _r: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn delete_prefix(
        &self,
        _r: Request<pb::DeletePrefixRequest>,
    ) -> Result<Response<pb::DeletePrefixResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type SweepStream = BoxStream<'static, Result<pb::SweepProgress, Status>>;
    async fn sweep(&self, _r: Request<pb::SweepRequest>) -> Result<Response<Self::SweepStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn list(&self, _r: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn list_blocks(
        &self,
        _r: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}
