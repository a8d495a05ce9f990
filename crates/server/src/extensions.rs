//! `ferry.v1.Extensions`: calls only Ferry's own clients make, each a
//! cheaper form of a standard RocketMQ call. Other clients never see them.
//!
//! Why: a transaction ends with one EndTransaction per message, and each
//! call costs both sides far more CPU than the record it writes. Producers
//! that end many transactions at once (Ferry's Rust client shares these
//! calls the way it shares sends) end them in one call instead.

use std::sync::Arc;

use ferry_broker::{BrokerError, EndDecision};
use ferry_proto::ext;
use ferry_proto::ext::extensions_server::{Extensions, ExtensionsServer};
use ferry_proto::v2 as pb;
use ferry_record::{TxOutcome, TxSource};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::engine::{EndRequest, Engine, EngineError, MAX_END_BATCH};
use crate::metrics::Rpc;
use crate::service::{broker_status, client_id, name, timed};
use crate::{status, ServerConfig};

pub struct ExtensionsService {
    engine: Arc<Engine>,
}

impl ExtensionsService {
    pub fn server(engine: Arc<Engine>, config: &ServerConfig) -> ExtensionsServer<Self> {
        ExtensionsServer::new(ExtensionsService { engine })
            .max_decoding_message_size(config.max_request_bytes)
    }
}

/// What an EndTransaction asks, checked: `Ok(None)` when there is nothing
/// to do (a checker that does not know the outcome yet: the broker asks
/// again at its next interval).
pub(crate) fn end_request(
    req: pb::EndTransactionRequest,
) -> Result<Option<EndRequest>, pb::Status> {
    let source = match pb::TransactionSource::try_from(req.source) {
        Ok(pb::TransactionSource::SourceServerCheck) => TxSource::ServerCheck,
        _ => TxSource::Client,
    };
    let outcome = match pb::TransactionResolution::try_from(req.resolution) {
        Ok(pb::TransactionResolution::Commit) => TxOutcome::Commit,
        Ok(pb::TransactionResolution::Rollback) => TxOutcome::Rollback,
        _ if source == TxSource::ServerCheck => {
            debug!(transaction = %req.transaction_id, "check answered with an unknown outcome");
            return Ok(None);
        }
        _ => {
            return Err(broker_status(BrokerError::BadRequest(format!(
                "resolution must be COMMIT or ROLLBACK, not {}",
                req.resolution
            ))))
        }
    };
    Ok(Some(EndRequest {
        topic: name(&req.topic),
        message_id: req.message_id,
        transaction_id: req.transaction_id,
        outcome,
        source,
    }))
}

/// The status an EndTransaction answers with for the engine's decision.
pub(crate) fn end_status(
    end: &EndRequest,
    decided: Result<EndDecision, EngineError>,
) -> pb::Status {
    match decided {
        Ok(EndDecision::Record(_)) => status::ok(),
        Ok(EndDecision::AlreadyEnded(_)) => pb::Status {
            code: pb::Code::Ok as i32,
            message: "OK (the transaction had already ended this way; nothing changed)".into(),
        },
        Err(e) => {
            debug!(transaction = %end.transaction_id, error = %e, "end transaction refused");
            status::from_error(&e)
        }
    }
}

#[tonic::async_trait]
impl Extensions for ExtensionsService {
    async fn end_transactions(
        &self,
        request: Request<ext::EndTransactionsRequest>,
    ) -> Result<Response<ext::EndTransactionsResponse>, Status> {
        let call = self.serve_end_transactions(request);
        timed(&self.engine.metrics, Rpc::EndTransactions, call).await
    }
}

impl ExtensionsService {
    async fn serve_end_transactions(
        &self,
        request: Request<ext::EndTransactionsRequest>,
    ) -> Result<Response<ext::EndTransactionsResponse>, Status> {
        let answer = |entries: Vec<pb::Status>| {
            let status = status::overall(&entries);
            Ok(Response::new(ext::EndTransactionsResponse {
                status: Some(status),
                entries: entries
                    .into_iter()
                    .map(|s| pb::EndTransactionResponse { status: Some(s) })
                    .collect(),
            }))
        };
        // The whole call refused: one status, no entries.
        let refuse = |status| {
            Ok(Response::new(ext::EndTransactionsResponse {
                status: Some(status),
                entries: vec![],
            }))
        };
        if let Err(s) = client_id(&request) {
            return refuse(s);
        }
        let entries = request.into_inner().entries;
        if entries.is_empty() || entries.len() > MAX_END_BATCH {
            return refuse(broker_status(BrokerError::BadRequest(format!(
                "EndTransactions carries 1 to {MAX_END_BATCH} entries, not {}",
                entries.len()
            ))));
        }
        // Checked entries go to the engine together; the others keep their
        // refusal (or their nothing-to-do OK) in place.
        let mut answers: Vec<Option<pb::Status>> = Vec::with_capacity(entries.len());
        let mut ends = Vec::with_capacity(entries.len());
        for e in entries {
            match end_request(e) {
                Ok(Some(end)) => {
                    answers.push(None);
                    ends.push(end);
                }
                Ok(None) => answers.push(Some(status::ok())),
                Err(refused) => answers.push(Some(refused)),
            }
        }
        let decided = match self.engine.end_transactions(&ends).await {
            Ok(decided) => decided,
            Err(e) => {
                // Nothing is known durable: every entry that reached the
                // engine fails with the storage error.
                let failed = status::from_error(&e);
                let entries = answers
                    .into_iter()
                    .map(|a| a.unwrap_or_else(|| failed.clone()))
                    .collect();
                return answer(entries);
            }
        };
        let mut decided = ends.iter().zip(decided);
        let entries = answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    let (end, d) = decided.next().expect("one decision per end");
                    end_status(end, d)
                })
            })
            .collect();
        answer(entries)
    }
}
